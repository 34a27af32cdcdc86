//! V2 (Open Inference Protocol) REST/JSON bodies. Filled in by the runtime work.
