//go:build !rigv2

package main

const pluginVersion = "1.0.0"
