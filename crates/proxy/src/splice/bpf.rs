//! The bpf(2) objects behind splicing: the maps, the verdict program and the ring buffer it
//! reports through. Everything here is a thin, safe wrapper over one system call each.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
const BPF_ANY: u64 = 0;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_GET_SOCKET_COOKIE: i32 = 46;
const BPF_FUNC_SK_REDIRECT_HASH: i32 = 72;
const BPF_FUNC_RINGBUF_OUTPUT: i32 = 130;

/// The `union bpf_attr` the bpf(2) system call takes, filled field by field.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 144])
    }

    fn u32(mut self, offset: usize, value: u32) -> Attr {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64(mut self, offset: usize, value: u64) -> Attr {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn ptr<T>(self, offset: usize, value: *const T) -> Attr {
        self.u64(offset, value as u64)
    }

    fn call(&self, command: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: the attribute is a valid, fully initialised `union bpf_attr` of the size
        // passed; every pointer placed in it refers to memory that outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                self.0.as_ptr(),
                self.0.len() as libc::c_uint,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    fn call_for_fd(&self, command: libc::c_long) -> io::Result<OwnedFd> {
        let fd = self.call(command)? as RawFd;
        // SAFETY: on success these commands return a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// A BPF map keyed by socket cookies.
pub struct Map(OwnedFd);

impl Map {
    fn create(kind: u32, value_size: u32, capacity: u32) -> io::Result<Map> {
        // Hash maps would otherwise allocate all their entries up front.
        let flags = if kind == BPF_MAP_TYPE_HASH {
            BPF_F_NO_PREALLOC
        } else {
            0
        };
        Attr::new()
            .u32(0, kind)
            .u32(4, 8)
            .u32(8, value_size)
            .u32(12, capacity)
            .u32(16, flags)
            .call_for_fd(BPF_MAP_CREATE)
            .map(Map)
    }

    /// Sockets by cookie.
    pub fn sockets(capacity: u32) -> io::Result<Map> {
        Map::create(BPF_MAP_TYPE_SOCKHASH, 4, capacity)
    }

    /// Byte counts by cookie.
    pub fn counters(capacity: u32) -> io::Result<Map> {
        Map::create(BPF_MAP_TYPE_HASH, size_of::<Counter>() as u32, capacity)
    }

    pub fn insert_socket(&self, key: u64, socket: &impl AsFd) -> io::Result<()> {
        let value = socket.as_fd().as_raw_fd() as u32;
        self.update(key, &value)
    }

    pub fn insert_counter(&self, key: u64) -> io::Result<()> {
        self.update(key, &Counter::default())
    }

    fn update<T>(&self, key: u64, value: &T) -> io::Result<()> {
        Attr::new()
            .u32(0, self.0.as_raw_fd() as u32)
            .ptr(8, &key)
            .ptr(16, value)
            .u64(24, BPF_ANY)
            .call(BPF_MAP_UPDATE_ELEM)
            .map(drop)
    }

    pub fn counter(&self, key: u64) -> io::Result<Counter> {
        let mut value = Counter::default();
        Attr::new()
            .u32(0, self.0.as_raw_fd() as u32)
            .ptr(8, &key)
            // The kernel writes the value here.
            .u64(16, &mut value as *mut Counter as u64)
            .call(BPF_MAP_LOOKUP_ELEM)?;
        Ok(value)
    }

    /// Removes `key`; one already gone (closing a socket takes it out of socket maps) is
    /// no error.
    pub fn remove(&self, key: u64) {
        let _ = Attr::new()
            .u32(0, self.0.as_raw_fd() as u32)
            .ptr(8, &key)
            .call(BPF_MAP_DELETE_ELEM);
    }
}

/// What the program counts for each spliced socket.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Counter {
    /// Bytes received and redirected to the peer.
    pub redirected: u64,
    /// `redirected` when the program last reported the socket.
    reported: u64,
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// Loads the stream-verdict program and attaches it to the sockets of `peers`. For each
/// segment such a socket receives it adds the bytes to the socket's counter, reports the
/// socket's cookie on `reports` every `report_every` bytes, and redirects the segment to
/// the socket `peers` holds under the cookie. Without a target (the peer is gone) the
/// segment stays on the receiving socket, where nothing reads it: the session is ending.
/// Empty segments are dropped.
pub fn load_verdict(
    peers: &Map,
    counters: &Map,
    reports: &RingBuffer,
    report_every: u32,
) -> io::Result<OwnedFd> {
    const MOV64_REG: u8 = 0xbf;
    const MOV64_IMM: u8 = 0xb7;
    const ADD64_IMM: u8 = 0x07;
    const ADD64_REG: u8 = 0x0f;
    const SUB64_REG: u8 = 0x1f;
    const LDX_W: u8 = 0x61;
    const LDX_DW: u8 = 0x79;
    const STX_DW: u8 = 0x7b;
    const LD_IMM64: u8 = 0x18;
    const CALL: u8 = 0x85;
    const JEQ_IMM: u8 = 0x15;
    const JNE_IMM: u8 = 0x55;
    const JLT_IMM: u8 = 0xa5;
    const EXIT: u8 = 0x95;
    const PSEUDO_MAP_FD: u8 = 1;
    const SK_DROP: i32 = 0;
    const SK_PASS: i32 = 1;
    const SKB_LEN: i16 = 0;
    const R0: u8 = 0;
    const R1: u8 = 1;
    const R2: u8 = 2;
    const R3: u8 = 3;
    const R4: u8 = 4;
    const R6: u8 = 6;
    const R7: u8 = 7;
    const FP: u8 = 10;
    let map = |fd: RawFd, dst: u8| {
        [
            insn(LD_IMM64, dst, PSEUDO_MAP_FD, 0, fd),
            insn(0, 0, 0, 0, 0),
        ]
    };
    let mut program = vec![
        insn(MOV64_REG, R6, R1, 0, 0),
        // An empty segment carries a FIN: TCP has taken note of it already, and the kernel
        // would take its redirect for a broken pipe.
        insn(LDX_W, R2, R6, SKB_LEN, 0),
        insn(JNE_IMM, R2, 0, 2, 0),
        insn(MOV64_IMM, R0, 0, 0, SK_DROP),
        insn(EXIT, 0, 0, 0, 0),
        // key (fp - 8) = bpf_get_socket_cookie(skb)
        insn(CALL, 0, 0, 0, BPF_FUNC_GET_SOCKET_COOKIE),
        insn(STX_DW, FP, R0, -8, 0),
    ];
    // r7 = counters[key]
    program.extend(map(counters.0.as_raw_fd(), R1));
    program.extend([
        insn(MOV64_REG, R2, FP, 0, 0),
        insn(ADD64_IMM, R2, 0, 0, -8),
        insn(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, R0, 0, 17, 0), // to the redirect
        insn(MOV64_REG, R7, R0, 0, 0),
        // counter.redirected += skb->len
        insn(LDX_W, R1, R6, SKB_LEN, 0),
        insn(LDX_DW, R2, R7, 0, 0),
        insn(ADD64_REG, R2, R1, 0, 0),
        insn(STX_DW, R7, R2, 0, 0),
        // if counter.redirected - counter.reported >= report_every: report the key
        insn(LDX_DW, R3, R7, 8, 0),
        insn(SUB64_REG, R2, R3, 0, 0),
        insn(JLT_IMM, R2, 0, 9, report_every as i32), // to the redirect
        insn(LDX_DW, R2, R7, 0, 0),
        insn(STX_DW, R7, R2, 8, 0),
    ]);
    program.extend(map(reports.map.as_raw_fd(), R1));
    program.extend([
        insn(MOV64_REG, R2, FP, 0, 0),
        insn(ADD64_IMM, R2, 0, 0, -8),
        insn(MOV64_IMM, R3, 0, 0, 8),
        insn(MOV64_IMM, R4, 0, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_RINGBUF_OUTPUT),
        // the redirect: r0 = bpf_sk_redirect_hash(skb, peers, key, 0)
        insn(MOV64_REG, R1, R6, 0, 0),
    ]);
    program.extend(map(peers.0.as_raw_fd(), R2));
    program.extend([
        insn(MOV64_REG, R3, FP, 0, 0),
        insn(ADD64_IMM, R3, 0, 0, -8),
        insn(MOV64_IMM, R4, 0, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_SK_REDIRECT_HASH),
        // SK_DROP (0) means no target: pass instead.
        insn(JNE_IMM, R0, 0, 1, 0),
        insn(MOV64_IMM, R0, 0, 0, SK_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 16384];
    let loaded = Attr::new()
        .u32(0, BPF_PROG_TYPE_SK_SKB)
        .u32(4, program.len() as u32)
        .ptr(8, program.as_ptr())
        .ptr(16, license.as_ptr())
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .ptr(32, log.as_mut_ptr())
        .call_for_fd(BPF_PROG_LOAD);
    let program = loaded.map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let verifier = String::from_utf8_lossy(&log[..end]);
        io::Error::new(
            e.kind(),
            format!("loading the splice program: {e} {}", verifier.trim()),
        )
    })?;
    Attr::new()
        .u32(0, peers.0.as_raw_fd() as u32)
        .u32(4, program.as_raw_fd() as u32)
        .u32(8, BPF_SK_SKB_STREAM_VERDICT)
        .call(BPF_PROG_ATTACH)?;
    Ok(program)
}

/// A BPF ring buffer of 8-byte records (socket cookies), read from userspace.
pub struct RingBuffer {
    map: OwnedFd,
    /// The consumer position page (read-write).
    consumer: *mut u8,
    /// The producer position page followed by the data, mapped twice in a row so that a
    /// record never wraps.
    producer: *mut u8,
    page: usize,
    size: usize,
}

// SAFETY: the mappings are only read through atomics and plain reads of records the kernel
// has committed; only the one consumer (behind a mutex in the caller) moves its position.
unsafe impl Send for RingBuffer {}
unsafe impl Sync for RingBuffer {}

const RINGBUF_BUSY: u32 = 1 << 31;
const RINGBUF_DISCARD: u32 = 1 << 30;
const RINGBUF_HEADER: usize = 8;

impl RingBuffer {
    /// `size`: a power of two, a multiple of the page size.
    pub fn new(size: usize) -> io::Result<RingBuffer> {
        let map = Attr::new()
            .u32(0, BPF_MAP_TYPE_RINGBUF)
            .u32(12, size as u32)
            .call_for_fd(BPF_MAP_CREATE)?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let consumer = mmap(&map, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = match mmap(&map, page + 2 * size, libc::PROT_READ, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above, with this length.
                unsafe { libc::munmap(consumer.cast(), page) };
                return Err(e);
            }
        };
        Ok(RingBuffer {
            map,
            consumer,
            producer,
            page,
            size,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.map.as_raw_fd()
    }

    /// Hands every committed record to `f` and frees it.
    pub fn drain(&self, mut f: impl FnMut(&[u8])) {
        // SAFETY: both positions are 8-byte aligned u64s at the start of their pages, which
        // stay mapped while self lives; the kernel writes the producer's, we the consumer's.
        let (consumer_pos, producer_pos) = unsafe {
            (
                &*(self.consumer as *const AtomicU64),
                &*(self.producer as *const AtomicU64),
            )
        };
        let mut at = consumer_pos.load(Ordering::Acquire);
        loop {
            if at >= producer_pos.load(Ordering::Acquire) {
                return;
            }
            let offset = (at as usize) & (self.size - 1);
            // SAFETY: the data area is mapped twice, so a record at any offset below `size`
            // lies wholly inside the mapping; the header is a u32 the kernel writes last.
            let record = unsafe { self.producer.add(self.page + offset) };
            let header = unsafe { &*(record as *const AtomicU32) }.load(Ordering::Acquire);
            if header & RINGBUF_BUSY != 0 {
                return;
            }
            let len = (header & !(RINGBUF_BUSY | RINGBUF_DISCARD)) as usize;
            if header & RINGBUF_DISCARD == 0 {
                // SAFETY: a committed record's `len` bytes follow its header.
                f(unsafe { std::slice::from_raw_parts(record.add(RINGBUF_HEADER), len) });
            }
            at += ((len + RINGBUF_HEADER + 7) & !7) as u64;
            consumer_pos.store(at, Ordering::Release);
        }
    }
}

impl Drop for RingBuffer {
    fn drop(&mut self) {
        // SAFETY: both were mapped in `new` with these lengths and are not used after.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast(), self.page + 2 * self.size);
        }
    }
}

fn mmap(fd: &OwnedFd, len: usize, protection: libc::c_int, offset: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh shared mapping of the ring buffer's descriptor; the kernel checks the
    // length, protection and offset against the map.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            protection,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}
