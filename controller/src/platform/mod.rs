//! Where canaries live, behind one seam: [`local`] (spec files and a state file) and
//! [`kubernetes`] (Canary resources, their Deployments and status).

pub mod local;
