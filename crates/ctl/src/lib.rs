//! stolonctl: its command line definition (for the program and for the generator of the
//! manual pages and shell completions) and its commands.

pub mod cli;
pub mod cmd;
