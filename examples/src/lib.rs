//! Examples live in `examples/`: `cargo run -p fedai-examples --example list_workers`.
