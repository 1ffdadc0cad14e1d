// The Go stress plugin: every call copies every header and the whole body out of the host
// and allocates, so the host calls cabi_realloc many times per request and Go's collector
// runs often, including while the host is placing values in Go memory. It reports what it
// saw so the test can check each request was handled fully, and Go's own heap figures so
// the test can check memory stays flat. It also reads its headers again in one batched call
// and counts itself in the key-value store with KvIncrAndGet (world 0.2.2), and reports
// whether each agreed with the single calls, so the batched calls' results are lowered into
// Go memory many thousands of times while the collector runs.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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
	_ = req.SetHeader("x-stress-batch", s.batchAgrees(req))
	_ = req.SetHeader("x-stress-kv", s.countAgrees())
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

// batchNames are the stress test's 24 headers, one spelled in capitals, and one nobody
// sends.
var batchNames = func() []string {
	names := []string{"X-HEADER-0", "x-absent"}
	for h := 1; h < 24; h++ {
		names = append(names, "x-header-"+strconv.Itoa(h))
	}
	return names
}()

// batchAgrees reads batchNames in one Headers call and says "ok" if each value is what
// Header returns for it, or what differs.
func (s *stress) batchAgrees(req *sluice.Request) string {
	values, present := req.Headers(batchNames...)
	if len(values) != len(batchNames) || len(present) != len(batchNames) {
		return fmt.Sprintf("%d values for %d names", len(values), len(batchNames))
	}
	for i, name := range batchNames {
		one, ok := req.Header(name)
		if one != values[i] || ok != present[i] {
			return fmt.Sprintf("%s: batch %q/%v, single %q/%v", name, values[i], present[i], one, ok)
		}
	}
	return "ok"
}

// countAgrees counts this call in the store and reads the count back in the same
// KvIncrAndGet call: "ok" if the count read is the count returned.
func (s *stress) countAgrees() string {
	n, value, err := sluice.KvIncrAndGet("calls", 1, 0, "calls")
	switch {
	case err != nil:
		return err.Error()
	case string(value) != strconv.FormatInt(n, 10):
		return fmt.Sprintf("counted %d, read %q", n, value)
	}
	return "ok"
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
