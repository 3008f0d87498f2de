//! Property tests of the parsers of outside input in this crate (issue 14 §4): they never
//! panic, take bounded time per input, name the field of every rejection, and what
//! parses re-serializes to an equivalent value. Generators: [`crate::strategies`].

mod cluster;
mod plugin;
mod port_alias;
mod subnet_file;
