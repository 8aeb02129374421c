fn main() -> std::process::ExitCode {
    imagegen::cmd::main()
}
