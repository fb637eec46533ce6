// Package validate holds the tests of the deployment artefacts: the
// compose file and the Kubernetes manifests are parsed with the libraries
// their tools use (compose-spec's loader, kustomize and the typed
// Kubernetes API), and their settings checked against the binaries, since
// no container engine or cluster runs the tests.
package validate
