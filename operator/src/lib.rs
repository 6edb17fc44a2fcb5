//! The Workpool operator. It will reconcile WorkPool resources and provision their NATS
//! objects through [`workpool_core::provision`]; until then the crate only reserves its
//! place in the workspace.
