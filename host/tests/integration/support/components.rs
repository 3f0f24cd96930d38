//! Task components a test builds from a core module it made (by hand or
//! generated), in the shape `wit/`'s task world gives it.

use wit_component::StringEncoding;

/// The task world of `wit/`, resolved.
pub struct TaskWorld {
    resolve: wit_parser::Resolve,
    world: wit_parser::WorldId,
}

impl TaskWorld {
    /// The world named `task` in `wit/`.
    pub fn load() -> Self {
        let mut resolve = wit_parser::Resolve::default();
        let (package, _) = resolve
            .push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit"))
            .unwrap();
        let world = resolve.select_world(&[package], Some("task")).unwrap();
        Self { resolve, world }
    }

    /// The core module shape of a task: the imports and exports (`run`,
    /// `cabi_post_run`, `cabi_realloc`, `memory`) its core module must have,
    /// as `wit-component` derives them.
    pub fn core_shape(&self) -> Vec<u8> {
        wit_component::dummy_module(
            &self.resolve,
            self.world,
            wit_parser::ManglingAndAbi::Legacy(wit_parser::LiftLowerAbi::Sync),
        )
    }

    /// `module` as a task component whose strings are in `encoding`, or
    /// why it does not fit the world.
    pub fn component(
        &self,
        mut module: Vec<u8>,
        encoding: StringEncoding,
    ) -> anyhow::Result<Vec<u8>> {
        wit_component::embed_component_metadata(&mut module, &self.resolve, self.world, encoding)?;
        wit_component::ComponentEncoder::default()
            .module(&module)?
            .validate(true)
            .encode()
    }
}
