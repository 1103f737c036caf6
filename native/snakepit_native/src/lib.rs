//! Native core of Snakepit: OS processes, the gRPC client to Python workers
//! and JSON conversion of call payloads. Every NIF is declared in the Elixir
//! module `Snakepit.Native`; this file only wires the domains together.

mod atoms;
mod grpc;
mod json;
mod process;
mod reply;
mod runtime;

fn load(_env: rustler::Env, _info: rustler::Term) -> bool {
    process::on_load();
    true
}

rustler::init!("Elixir.Snakepit.Native", load = load);
