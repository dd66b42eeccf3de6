//go:build rigv2

package main

// Built with -tags rigv2: the "v2" of the plugin for update tests.
const pluginVersion = "2.0.0"
