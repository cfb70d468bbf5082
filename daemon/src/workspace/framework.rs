//! `workspace::framework` — which JavaScript framework a package uses, and
//! the environment variables that framework inlines into its build
//! (turbo's framework inference: `NEXT_PUBLIC_*` for Next.js, `VITE_*` for
//! Vite, …), so they are keyed and passed without being listed.
//!
//! Owns: the table of frameworks (dependency names that identify one, in
//! priority order, and its env wildcards) and the detection from a
//! package's dependencies. Never: reads files or the environment.

/// How a framework's dependency list must match.
#[derive(Clone, Copy)]
enum Needs {
    /// Any one of the dependencies.
    Any,
    /// Every one of them.
    All,
}

/// (name, how its dependencies match, dependencies, env wildcards). The
/// first match wins, so a framework built on another comes first.
const FRAMEWORKS: &[(&str, Needs, &[&str], &[&str])] = &[
    ("blitzjs", Needs::Any, &["blitz"], &["NEXT_PUBLIC_*"]),
    ("nextjs", Needs::Any, &["next"], &["NEXT_PUBLIC_*"]),
    ("gatsby", Needs::Any, &["gatsby"], &["GATSBY_*"]),
    ("astro", Needs::Any, &["astro"], &["PUBLIC_*"]),
    (
        "solidstart",
        Needs::All,
        &["solid-js", "solid-start"],
        &["VITE_*"],
    ),
    ("vue", Needs::Any, &["@vue/cli-service"], &["VUE_APP_*"]),
    (
        "sveltekit",
        Needs::Any,
        &["@sveltejs/kit"],
        &["VITE_*", "PUBLIC_*"],
    ),
    (
        "create-react-app",
        Needs::Any,
        &["react-scripts", "react-dev-utils"],
        &["REACT_APP_*"],
    ),
    (
        "nitro",
        Needs::Any,
        &["nitropack", "nitropack-nightly"],
        &["NITRO_*"],
    ),
    (
        "nuxtjs",
        Needs::Any,
        &["nuxt", "nuxt-edge", "nuxt3", "nuxt3-edge"],
        &["NUXT_*", "NITRO_*"],
    ),
    (
        "redwoodjs",
        Needs::Any,
        &["@redwoodjs/core"],
        &["REDWOOD_ENV_*"],
    ),
    ("vite", Needs::Any, &["vite"], &["VITE_*"]),
    ("sanity", Needs::Any, &["@sanity/cli"], &["SANITY_STUDIO_*"]),
];

/// The framework a package uses (its name and env wildcards), from its
/// dependencies (`dependencies`, `devDependencies`, … names).
pub fn detect<'a>(
    deps: impl Iterator<Item = &'a str> + Clone,
) -> Option<(&'static str, &'static [&'static str])> {
    FRAMEWORKS.iter().find_map(|(name, needs, wanted, env)| {
        let has = |w: &&str| deps.clone().any(|d| d == *w);
        let hit = match needs {
            Needs::Any => wanted.iter().any(has),
            Needs::All => wanted.iter().all(has),
        };
        hit.then_some((*name, *env))
    })
}

#[cfg(test)]
mod tests {
    use super::detect;

    #[test]
    fn frameworks_are_detected_by_their_dependencies() {
        let cases: &[(&[&str], Option<&str>, &[&str])] = &[
            (&["next", "react"], Some("nextjs"), &["NEXT_PUBLIC_*"]),
            (&["blitz", "next"], Some("blitzjs"), &["NEXT_PUBLIC_*"]),
            (&["vite", "react"], Some("vite"), &["VITE_*"]),
            (
                &["@sveltejs/kit", "vite"],
                Some("sveltekit"),
                &["VITE_*", "PUBLIC_*"],
            ),
            (&["solid-js", "vite"], Some("vite"), &["VITE_*"]),
            (
                &["solid-js", "solid-start"],
                Some("solidstart"),
                &["VITE_*"],
            ),
            (
                &["react-dev-utils"],
                Some("create-react-app"),
                &["REACT_APP_*"],
            ),
            (&["nuxt3"], Some("nuxtjs"), &["NUXT_*", "NITRO_*"]),
            (&["react", "typescript"], None, &[]),
            (&[], None, &[]),
        ];
        for (deps, name, env) in cases {
            let got = detect(deps.iter().copied());
            assert_eq!(got.map(|g| g.0), *name, "{deps:?}");
            assert_eq!(got.map(|g| g.1).unwrap_or(&[]), *env, "{deps:?}");
        }
    }
}
