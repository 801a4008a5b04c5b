//! Wire formats between peers: [`signature`] authenticates every peer request, [`wire`] holds
//! the bodies (pages of entries, checkpoints, receipts).

pub mod archive;
pub mod signature;
pub mod wire;
