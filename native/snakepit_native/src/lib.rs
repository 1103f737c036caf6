//! Native core of Snakepit: OS processes, the two call transports to Python
//! workers (the lane and gRPC) over one wire format, JSON conversion of
//! call payloads and zero-copy regions. Every NIF is declared in the Elixir
//! module `Snakepit.Native`; this file only wires the domains together.

mod atoms;
mod decode;
mod error;
mod grpc;
mod json;
mod lane;
mod process;
mod reply;
mod runtime;
#[cfg(test)]
mod test_shims;
mod wire;
mod zero_copy;

fn load(_env: rustler::Env, info: rustler::Term) -> bool {
    // The load info is the path of the `snakepit_guard` program.
    process::on_load(info.decode::<String>().ok().as_deref());
    true
}

rustler::init!("Elixir.Snakepit.Native", load = load);
