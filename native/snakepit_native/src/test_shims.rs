//! Stand-ins for the BEAM's `enif_*` functions, in the test binary only.
//!
//! On Linux rustler links the NIF API directly: the shared library leaves
//! `enif_*` undefined and the VM's executable supplies them when it loads
//! the library. A test executable has no VM, and rustler registers every
//! NIF at start-up (inventory), so every `enif_*` the crate uses would stay
//! unresolved and the test binary would not link (linker flags cannot
//! help: Rust calls through the GOT, so the loader resolves them eagerly).
//! These definitions let it link; each aborts if called. Tests here cover
//! the parts that need no `Env` (parsing, framing, decoding); whatever
//! builds terms is exercised through the VM by the ExUnit suites. A NIF
//! that starts using a new `enif_*` function adds its name here (the link
//! error names it).

macro_rules! shims {
    ($($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            extern "C" fn $name() {
                eprintln!(concat!(stringify!($name), " called outside the BEAM"));
                std::process::abort();
            }
        )*
    };
}

shims!(
    enif_alloc_env,
    enif_alloc_resource,
    enif_binary_to_term,
    enif_clear_env,
    enif_free_env,
    enif_get_atom,
    enif_get_atom_length,
    enif_get_double,
    enif_get_int,
    enif_get_list_cell,
    enif_get_local_pid,
    enif_get_long,
    enif_get_map_size,
    enif_get_map_value,
    enif_get_resource,
    enif_get_tuple,
    enif_get_uint,
    enif_get_ulong,
    enif_inspect_binary,
    enif_is_atom,
    enif_is_empty_list,
    enif_is_exception,
    enif_is_identical,
    enif_is_list,
    enif_is_map,
    enif_keep_resource,
    enif_make_atom_len,
    enif_make_badarg,
    enif_make_copy,
    enif_make_double,
    enif_make_int,
    enif_make_list_from_array,
    enif_make_long,
    enif_make_map_from_arrays,
    enif_make_new_binary,
    enif_make_new_map,
    enif_make_resource,
    enif_make_resource_binary,
    enif_make_tuple_from_array,
    enif_make_ulong,
    enif_map_iterator_create,
    enif_map_iterator_destroy,
    enif_map_iterator_get_pair,
    enif_map_iterator_next,
    enif_map_iterator_prev,
    enif_raise_exception,
    enif_release_binary,
    enif_release_resource,
    enif_schedule_nif,
    enif_send,
    enif_snprintf,
    enif_term_to_binary,
    enif_term_type,
    enif_thread_type,
);
