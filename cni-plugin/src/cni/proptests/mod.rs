//! Property tests of the plugin's outside input (issue 14 §4): the `CNI_*` variables,
//! `CNI_ARGS`, the version strings and `prevResult`. They never panic, take bounded time,
//! and name the variable or field of every rejection; a result reads back as written.
//! The network config itself is covered in `twill-conf`.

mod env;
mod result;
