// Command shout is an example eKuiper function plugin exporting two functions:
// shout(s) returns s upper-cased with "!" appended, whisper(s) lower-cased.
//
// Build: go build -trimpath -buildmode=plugin -o Shout.so ./plugins/functions/shout
// eKuiper looks up each function's symbol by its name with the first letter
// upper-cased (Shout, Whisper). It only knows the function list from its own
// key-value store ("pluginFuncs", written by its installer or by
// POST /plugins/functions/shout/register); without an entry it registers only
// the function named like the plugin (shout).
package main

import (
	"fmt"
	"strings"

	"github.com/lf-edge/ekuiper/contract/v2/api"
)

// stringFunc is a one-argument, non-aggregate function on strings.
type stringFunc struct {
	name string
	f    func(string) string
}

func (s stringFunc) Validate(args []any) error {
	if len(args) != 1 {
		return fmt.Errorf("%s takes 1 argument, got %d", s.name, len(args))
	}
	return nil
}

func (s stringFunc) Exec(_ api.FunctionContext, args []any) (any, bool) {
	v, ok := args[0].(string)
	if !ok {
		return fmt.Errorf("%s: argument must be a string, got %T", s.name, args[0]), false
	}
	return s.f(v), true
}

func (s stringFunc) IsAggregate() bool { return false }

// Shout and Whisper are exported instances (eKuiper accepts an api.Function
// value as well as a func() api.Function constructor). They are of the
// concrete type on purpose: plugin.Lookup of a variable yields a pointer to
// it, and *stringFunc is an api.Function while *api.Function would not be.
var (
	Shout   = stringFunc{"shout", func(v string) string { return strings.ToUpper(v) + "!" }}
	Whisper = stringFunc{"whisper", strings.ToLower}
)

var _ api.Function = &Shout
