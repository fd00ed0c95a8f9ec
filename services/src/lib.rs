//! The services of Strom's sensor pipeline
