//! Not a task plugin: a plain `wasi:cli` command. The plugin registry must
//! refuse it as "a component of another world". Test only.

fn main() {
    println!("hello from a command component");
}
