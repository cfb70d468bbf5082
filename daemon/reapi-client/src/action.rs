//! `action` — the REAPI Action a vx cache entry is stored under. vx keys
//! tasks with blake3; REAPI servers want SHA-256 digests of an `Action`
//! message that is in their CAS. So each task key gets a synthetic,
//! deterministic `Command` (its arguments carry the key and the task, its
//! working directory the project) and an `Action` naming that command, an
//! empty input root and vx's salt; the Action's SHA-256 is the
//! ActionCache key. Equal vx keys give equal Action digests on every
//! machine; different keys give different ones.
//!
//! Never: puts a path of the checkout, an environment value or a secret
//! into the messages (the key already folds what the task depends on).

use vx_reapi::re::{Action, Command, Digest, Directory};
use vxd::cache::remote::ArtifactId;

/// Changes when the mapping changes, so old entries are not mistaken for
/// new ones.
pub const SALT: &[u8] = b"vx-reapi-cache-v1";

/// The synthetic action of one task key, with the encoded messages that
/// must be in the CAS before its result is stored.
#[derive(Debug, Clone)]
pub struct TaskAction {
    pub digest: Digest,
    pub action: (Digest, Vec<u8>),
    pub command: (Digest, Vec<u8>),
    pub input_root: (Digest, Vec<u8>),
}

/// The Action of `id`.
pub fn task_action(id: &ArtifactId) -> TaskAction {
    let command = Command {
        arguments: vec![
            "vx".into(),
            "cache-entry".into(),
            "--key".into(),
            id.key.to_string(),
            "--task".into(),
            id.task.to_string(),
        ],
        working_directory: match id.project_dir {
            "." | "" => String::new(),
            d => d.to_string(),
        },
        output_node_properties: vec!["unix_mode".into()],
        ..Default::default()
    };
    let command = vx_reapi::digest_of_message(&command);
    let input_root = vx_reapi::digest_of_message(&Directory::default());
    let action = Action {
        command_digest: Some(command.0.clone()),
        input_root_digest: Some(input_root.0.clone()),
        salt: SALT.to_vec(),
        ..Default::default()
    };
    let action = vx_reapi::digest_of_message(&action);
    TaskAction {
        digest: action.0.clone(),
        action,
        command,
        input_root,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'a>(key: &'a str, dir: &'a str, task: &'a str) -> ArtifactId<'a> {
        ArtifactId {
            key,
            project_dir: dir,
            task,
        }
    }

    #[test]
    fn deterministic_and_distinct() {
        let k1 = "a".repeat(64);
        let k2 = "b".repeat(64);
        let a = task_action(&id(&k1, "packages/app", "build"));
        let b = task_action(&id(&k1, "packages/app", "build"));
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.action.1, b.action.1);
        for other in [
            task_action(&id(&k2, "packages/app", "build")),
            task_action(&id(&k1, "packages/lib", "build")),
            task_action(&id(&k1, "packages/app", "test")),
        ] {
            assert_ne!(a.digest, other.digest);
        }
        // The digest is the SHA-256 of the Action as encoded, and it names
        // the command and an empty input root.
        assert!(vx_reapi::check(&a.digest, &a.action.1).is_ok());
        assert_eq!(a.input_root.0.hash, vx_reapi::EMPTY_SHA256);
        let decoded = <Action as vx_reapi::prost::Message>::decode(a.action.1.as_slice()).unwrap();
        assert_eq!(decoded.command_digest.as_ref(), Some(&a.command.0));
        let cmd = <Command as vx_reapi::prost::Message>::decode(a.command.1.as_slice()).unwrap();
        assert!(cmd.arguments.contains(&k1));
        assert_eq!(cmd.working_directory, "packages/app");
        let root = task_action(&id(&k1, ".", "build"));
        let cmd = <Command as vx_reapi::prost::Message>::decode(root.command.1.as_slice()).unwrap();
        assert_eq!(cmd.working_directory, "");
    }
}
