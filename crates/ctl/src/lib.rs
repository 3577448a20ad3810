//! stolonctl's command line definition, for the program and for the generator of the
//! manual pages and shell completions.

pub mod cli;
