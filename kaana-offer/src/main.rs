use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = kaana_offer::Args::parse();
    kaana_proto::node::cli::main_with("kaana-offer", |settings| kaana_offer::run(args, settings))
}
