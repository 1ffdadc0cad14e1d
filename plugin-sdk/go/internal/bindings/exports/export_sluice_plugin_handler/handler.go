// Package export_sluice_plugin_handler is where the generated export glue (wit_exports)
// looks for the handler's functions. It is hand-written, not generated: it forwards to the
// handlers that package sluice installs, and keeps memory steady between calls.
package export_sluice_plugin_handler

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"

	witRuntime "sluice.dev/pdk/internal/wit/runtime"
	witTypes "sluice.dev/pdk/internal/wit/types"

	"sluice.dev/pdk/internal/bindings/imports/sluice_plugin_handler"
)

type (
	Hooks  = sluice_plugin_handler.Hooks
	Action = sluice_plugin_handler.Action
)

// Set by package sluice when the plugin registers. The hooks take no arguments: the
// request and response are the call's, read and edited through the request and response
// interfaces (world handler-plugin).
var (
	InitFn       func(config string) (Hooks, error)
	OnRequestFn  func() Action
	OnResponseFn func()
)

func Init(config string) witTypes.Result[Hooks, string] {
	defer release()
	if InitFn == nil {
		return witTypes.Err[Hooks, string]("this Go plugin never called sluice.Register (call it from an init function)")
	}
	hooks, err := InitFn(config)
	if err != nil {
		return witTypes.Err[Hooks, string](err.Error())
	}
	return witTypes.Ok[Hooks, string](hooks)
}

func OnRequest() Action {
	defer release()
	return OnRequestFn()
}

func OnResponse() {
	defer release()
	OnResponseFn()
}

// release runs when a hook call returns. It does two things the generated bindings do not:
//
//  1. It unpins what the host placed in Go memory during the call (the results of host
//     calls: header values, bodies). The bindings pin each such allocation, and only unpin
//     for exports that take list or string arguments: without this, every header a plugin
//     ever read would stay pinned and memory would grow with every request. Values the
//     plugin still holds stay alive as ordinary Go memory.
//  2. It runs the garbage collector when it is due (see collect).
func release() {
	witRuntime.Unpin()
	collect()
}

// Go's collector must never start inside cabi_realloc, the allocator the host calls to
// place arguments and results in Go memory: a collection reads the wall clock through WASI,
// and the component model forbids leaving the instance there ("cannot leave component
// instance", seen here after a few hundred requests). The WASI adapter can pause the
// monotonic clock for this, but not the wall clock. So automatic collection is off, and
// collect() runs it between calls, paced like GOGC=100: once the bytes allocated since the
// last collection exceed the live heap it left (and at least minGCBudget).
const minGCBudget = 4 << 20

// Reading the allocation counter (runtime/metrics) costs about 12,000 instructions, more
// than a small hook's own work, so collect() reads it only when the calls since the last
// reading could have used a quarter of the budget left, at the rate they allocated at
// before: every call for a plugin that allocates much, at most every maxCheckEvery calls.
// A call that read a body is always checked: a body's size is the client's choice (up to
// the route's max_body_bytes), so a run of large ones after small ones must not pile up
// garbage for maxCheckEvery calls.
const maxCheckEvery = 16

var (
	gcSamples  = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"}}
	allocsAtGC uint64
	gcBudget   uint64 = minGCBudget
	// The allocation counter at its last reading, the calls since, and how many calls
	// the next reading waits for.
	allocsAtRead uint64
	callsSince   uint64
	checkEvery   uint64 = 1
	// Set when the call in progress received a body from the host.
	readBody bool
)

// BodyRead tells collect() that the call in progress received a body from the host.
func BodyRead() {
	readBody = true
}

func init() {
	debug.SetGCPercent(-1)
}

func collect() {
	callsSince++
	if callsSince < checkEvery && !readBody {
		return
	}
	readBody = false
	metrics.Read(gcSamples[:1])
	allocs := gcSamples[0].Value.Uint64()
	perCall := max((allocs-allocsAtRead)/callsSince, 1)
	allocsAtRead, callsSince = allocs, 0
	if allocs-allocsAtGC >= gcBudget {
		runtime.GC()
		metrics.Read(gcSamples)
		allocsAtGC = gcSamples[0].Value.Uint64()
		allocsAtRead = allocsAtGC
		gcBudget = max(gcSamples[1].Value.Uint64(), minGCBudget)
	}
	left := gcBudget - (allocsAtRead - allocsAtGC)
	checkEvery = min(max(left/4/perCall, 1), maxCheckEvery)
}
