use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = kaana_prune::Args::parse();
    kaana_proto::node::cli::main_with("kaana-prune", |settings| kaana_prune::run(args, settings))
}
