// Command ticker is an example eKuiper source plugin: a pull source that emits
// one record per interval, {"n": 1, 2, ..., "message": <conf>, "version": ...}.
//
// Build: go build -trimpath -buildmode=plugin -o Ticker.so ./plugins/sources/ticker
// eKuiper opens plugins/sources/Ticker.so (or ticker.so, Ticker@v1.0.0.so) and
// looks up the symbol named like the plugin with its first letter upper-cased.
package main

import (
	"fmt"
	"time"

	"github.com/lf-edge/ekuiper/contract/v2/api"
)

// version is what each record carries, so a test can tell v1 from v2 running.
// build.sh sets it per build with a build tag (see version_v2.go).
var version = pluginVersion

type ticker struct {
	message string
	n       int64
}

// Provision reads the stream's properties (etc/sources/ticker.yaml, merged
// with the stream's CONF_KEY section). "interval" is read by eKuiper itself.
func (t *ticker) Provision(_ api.StreamContext, props map[string]any) error {
	t.message = "hello"
	if m, ok := props["message"]; ok {
		s, ok := m.(string)
		if !ok {
			return fmt.Errorf("ticker: property message must be a string, got %T", m)
		}
		t.message = s
	}
	return nil
}

func (t *ticker) Connect(_ api.StreamContext, sch api.StatusChangeHandler) error {
	sch(api.ConnectionConnected, "")
	return nil
}

// Pull is called by eKuiper once per interval.
func (t *ticker) Pull(ctx api.StreamContext, trigger time.Time, ingest api.TupleIngest, _ api.ErrorIngest) {
	t.n++
	ingest(ctx, map[string]any{"n": t.n, "message": t.message, "version": version}, nil, trigger)
}

func (t *ticker) Close(api.StreamContext) error { return nil }

var _ api.PullTupleSource = (*ticker)(nil)

// Ticker is the exported constructor eKuiper looks up (a func() api.Source).
func Ticker() api.Source { return &ticker{} }
