//! A command that imports an interface the host does not provide
//! (`example:bad-import/teleporter`). The host must refuse it at load time with that
//! reason, instead of crash-looping it.

wit_bindgen::generate!({ path: "wit", world: "needs-teleporter" });

fn main() {
    let beamed = example::bad_import::teleporter::beam_up("scotty");
    println!("beamed: {beamed}");
}
