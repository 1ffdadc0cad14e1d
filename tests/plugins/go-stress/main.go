// The Go stress plugin: every call copies every header and the whole body out of the host
// and allocates, so the host calls cabi_realloc many times per request and Go's collector
// runs often, including while the host is placing values in Go memory. It reports what it
// saw so the test can check each request was handled fully, and Go's own heap figures so
// the test can check memory stays flat.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"runtime"
	"strconv"

	"sluice.dev/pdk"
)

type stress struct {
	calls int
	keep  [][]byte // a little garbage that lives across calls
}

func (s *stress) OnRequest(req *sluice.Request) sluice.Action {
	s.calls++
	if _, ok := req.Header("x-panic"); ok {
		s.explode()
	}
	values := 0
	for _, name := range req.HeaderNames() {
		values += len(req.HeaderValues(name))
	}
	body, err := req.Body()
	if err != nil {
		return sluice.Respond(413, nil, []byte(err.Error()))
	}
	sum := sha256.Sum256(body)
	s.keep = append(s.keep, make([]byte, 4096))
	if len(s.keep) > 64 {
		s.keep = s.keep[1:]
	}
	_ = req.SetHeader("x-stress-headers", strconv.Itoa(values))
	_ = req.SetHeader("x-stress-body-sha256", hex.EncodeToString(sum[:]))
	return sluice.Continue()
}

// explode panics, for the test that a Go panic fails only its request and is reported
// with the plugin's own function names.
func (s *stress) explode() {
	panic("go-stress was asked to panic")
}

func (s *stress) OnResponse(req *sluice.Request, resp *sluice.Response) {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	_ = resp.SetHeader("x-stress-calls", strconv.Itoa(s.calls))
	_ = resp.SetHeader("x-go-heap-sys", strconv.FormatUint(m.HeapSys, 10))
	_ = resp.SetHeader("x-go-num-gc", strconv.FormatUint(uint64(m.NumGC), 10))
}

func init() {
	sluice.Register(func([]byte) (sluice.Plugin, error) { return &stress{}, nil })
}

func main() {}
