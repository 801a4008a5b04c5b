//! One pass of each kind of replication work, with no spawning and no timing decisions (the
//! scheduler decides when): [`ingest`] follows the source into this node's own feed.

pub mod ingest;
