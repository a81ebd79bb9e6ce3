//! The `premier` command line: `premier generate --help`.

fn main() -> anyhow::Result<()> {
    premier_cli::main()
}
