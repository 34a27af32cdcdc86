//! The `coscale` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    coscale_cli::main()
}
