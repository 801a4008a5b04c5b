//! Wire formats between peers. [`signature`] is how every peer request is authenticated.

pub mod signature;
