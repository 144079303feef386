//! Shared pieces of the xvs XDP programs: bounds-checked packet access and header parsing.
#![no_std]

pub mod packet;
