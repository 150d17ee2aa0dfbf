use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = kaana_challenge::Args::parse();
    kaana_proto::node::cli::main_with("kaana-challenge", |settings| kaana_challenge::run(args, settings))
}
