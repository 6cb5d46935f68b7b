//! The `ds-sync` binary: everything lives in the library; see `ds_sync::cli`.

fn main() -> std::process::ExitCode {
    ds_sync::cli::main()
}
