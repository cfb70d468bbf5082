//! The house rules that keep the client thin: `vx` never depends on `vxd`,
//! and `vx-proto` depends on nothing of ours.

use std::process::Command;

#[test]
fn client_does_not_depend_on_the_engine() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkgs = meta["packages"].as_array().unwrap();
    let deps_of = |name: &str| -> Vec<String> {
        pkgs.iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("package {name}"))["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    let client = deps_of("vx");
    assert!(
        !client.contains(&"vxd".to_string()),
        "the client depends on vxd: {client:?}"
    );
    assert!(
        !client.contains(&"tokio".to_string()),
        "the client pulls in tokio: {client:?}"
    );
    let proto = deps_of("vx-proto");
    for ours in ["vx", "vxd", "vx-tests"] {
        assert!(
            !proto.contains(&ours.to_string()),
            "vx-proto depends on {ours}"
        );
    }
}
