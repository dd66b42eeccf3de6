//! Fleet status: what every node reports of itself in the store
//! (`nodes/{node-id}.json`, [`report`]), and how that compares with what the
//! registry holds ([`drift`]). Nodes write reports; the service only reads
//! them, as untrusted input.

pub mod drift;
pub mod report;

pub use drift::{NodeState, PluginState, PluginStatus, RegistryView};
pub use report::{NodePlugin, NodeReport, Outcome};
