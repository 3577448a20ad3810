//! Who can reach whom: the store, the other nodes, and who is frozen.

use std::collections::BTreeSet;

/// A process of the simulated cluster; a keeper's node also runs its postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    Keeper(usize),
    Sentinel(usize),
    Proxy(usize),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Keeper(i) => write!(f, "keeper{i}"),
            Node::Sentinel(i) => write!(f, "sentinel{i}"),
            Node::Proxy(i) => write!(f, "proxy{i}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Net {
    /// Nodes cut off from the store.
    store_cut: BTreeSet<Node>,
    /// Pairs of nodes that cannot reach each other (kept ordered).
    links_cut: BTreeSet<(Node, Node)>,
    frozen: BTreeSet<Node>,
}

impl Net {
    pub fn reaches_store(&self, node: Node) -> bool {
        !self.store_cut.contains(&node)
    }

    pub fn linked(&self, a: Node, b: Node) -> bool {
        !self.links_cut.contains(&(a.min(b), a.max(b)))
    }

    pub fn frozen(&self, node: Node) -> bool {
        self.frozen.contains(&node)
    }

    pub fn cut_store(&mut self, node: Node, cut: bool) {
        if cut {
            self.store_cut.insert(node);
        } else {
            self.store_cut.remove(&node);
        }
    }

    pub fn cut_link(&mut self, a: Node, b: Node, cut: bool) {
        let key = (a.min(b), a.max(b));
        if cut {
            self.links_cut.insert(key);
        } else {
            self.links_cut.remove(&key);
        }
    }

    pub fn freeze(&mut self, node: Node, frozen: bool) {
        if frozen {
            self.frozen.insert(node);
        } else {
            self.frozen.remove(&node);
        }
    }

    pub fn heal_all(&mut self) {
        *self = Net::default();
    }
}
