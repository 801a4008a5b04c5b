//! Data servers a node follows. Kinto is the first (and for now only) kind.

pub mod kinto;
