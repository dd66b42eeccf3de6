// Command linefile is an example eKuiper sink plugin: it appends each record
// it receives to a file as one JSON line. Property: path (required).
//
// Build: go build -trimpath -buildmode=plugin -o Linefile.so ./plugins/sinks/linefile
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/lf-edge/ekuiper/contract/v2/api"
)

type linefile struct {
	path string
	f    *os.File
}

func (s *linefile) Provision(_ api.StreamContext, props map[string]any) error {
	p, ok := props["path"].(string)
	if !ok || p == "" {
		return fmt.Errorf("linefile: property path (a string) is required, got %v", props["path"])
	}
	s.path = p
	return nil
}

func (s *linefile) Connect(_ api.StreamContext, sch api.StatusChangeHandler) error {
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		sch(api.ConnectionDisconnected, err.Error())
		return err
	}
	s.f = f
	sch(api.ConnectionConnected, "")
	return nil
}

func (s *linefile) write(m map[string]any) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = s.f.Write(append(b, '\n'))
	return err
}

// Collect receives one record.
func (s *linefile) Collect(_ api.StreamContext, item api.MessageTuple) error {
	return s.write(item.ToMap())
}

// CollectList receives a batch (e.g. a window's output); one line per record.
func (s *linefile) CollectList(_ api.StreamContext, items api.MessageTupleList) error {
	for _, m := range items.ToMaps() {
		if err := s.write(m); err != nil {
			return err
		}
	}
	return nil
}

func (s *linefile) Close(api.StreamContext) error {
	if s.f == nil {
		return nil
	}
	return s.f.Close()
}

var _ api.TupleCollector = (*linefile)(nil)

// Linefile is the exported constructor eKuiper looks up (a func() api.Sink).
func Linefile() api.Sink { return &linefile{} }
