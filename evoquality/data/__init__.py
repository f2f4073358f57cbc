"""Image data: manifests (`manifest`), loading and preparation (`images`), synthetic distortions
(`distortions`) and the offline SynIQA benchmark (`syniqa`). Import the submodules directly."""
