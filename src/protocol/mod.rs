//! Wire formats between peers: [`signature`] authenticates every peer request, [`replay`]
//! remembers which signatures were used, [`wire`] holds the bodies (pages of entries,
//! checkpoints, receipts).

pub mod archive;
pub mod replay;
pub mod signature;
pub mod wire;
