//! `tlspolc`, the policy compiler's command line. Thin: argument parsing
//! and output live in [`cli`], the language in the `tlspolc` library, the
//! model, decision function and blob format in `policy`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
