package sluice

import (
	"errors"
	"fmt"
	"time"

	"sluice.dev/pdk/internal/bindings/imports/sluice_plugin_clock"
	"sluice.dev/pdk/internal/bindings/imports/sluice_plugin_kv"
	"sluice.dev/pdk/internal/bindings/imports/sluice_plugin_log"
	"sluice.dev/pdk/internal/bindings/imports/sluice_plugin_metrics"
	witTypes "sluice.dev/pdk/internal/wit/types"
)

// Logging through the gateway's log: lines are tagged with the plugin, the route and the
// request id. Messages below the gateway's level are dropped before formatting.

func logf(level sluice_plugin_log.Level, format string, args []any) {
	if sluice_plugin_log.Enabled(level) {
		sluice_plugin_log.Log(level, fmt.Sprintf(format, args...))
	}
}

func Debugf(format string, args ...any) { logf(sluice_plugin_log.Level_Debug, format, args) }
func Infof(format string, args ...any)  { logf(sluice_plugin_log.Level_Info, format, args) }
func Warnf(format string, args ...any)  { logf(sluice_plugin_log.Level_Warn, format, args) }
func Errorf(format string, args ...any) { logf(sluice_plugin_log.Level_Error, format, args) }

// Now is the host's wall-clock time (ms precision).
func Now() time.Time {
	return time.UnixMilli(int64(sluice_plugin_clock.NowMs()))
}

// Monotonic is the host's monotonic clock; only differences mean anything.
func Monotonic() time.Duration {
	return time.Duration(sluice_plugin_clock.MonotonicNs())
}

// CounterAdd adds value to this plugin's counter name in the gateway's metrics.
func CounterAdd(name string, value uint64) { sluice_plugin_metrics.CounterAdd(name, value) }

// Observe records value in this plugin's histogram name.
func Observe(name string, value float64) { sluice_plugin_metrics.Observe(name, value) }

// The key-value store kept by the gateway: per plugin name, shared by every instance and
// worker, and (with [kv] backend = "redis") by every gateway process.

var (
	// ErrKvUnavailable: a remote store cannot be reached right now.
	ErrKvUnavailable = errors.New("sluice: kv store unavailable")
	// ErrKvNotANumber: Incr found a value that is not a decimal integer.
	ErrKvNotANumber = errors.New("sluice: kv value is not a number")
	// ErrKvTooLarge: the key (1 KiB) or value (1 MiB) is over the limit.
	ErrKvTooLarge = errors.New("sluice: kv key or value too large")
)

func kvErr(e sluice_plugin_kv.KvError) error {
	switch e.Tag() {
	case sluice_plugin_kv.KvError_Unavailable:
		return fmt.Errorf("%w: %s", ErrKvUnavailable, e.Unavailable())
	case sluice_plugin_kv.KvError_NotANumber:
		return ErrKvNotANumber
	default:
		return ErrKvTooLarge
	}
}

func ttlMs(ttl time.Duration) uint64 {
	if ttl <= 0 {
		return 0
	}
	return uint64((ttl + time.Millisecond - 1) / time.Millisecond)
}

// KvGet is the value at key; ok is false when it is absent or expired.
func KvGet(key string) (value []byte, ok bool, err error) {
	r := sluice_plugin_kv.Get(key)
	if r.IsErr() {
		return nil, false, kvErr(r.Err())
	}
	if v := r.Ok(); v.IsSome() {
		return v.Some(), true, nil
	}
	return nil, false, nil
}

// KvSet stores value at key; a ttl of 0 keeps it until deleted.
func KvSet(key string, value []byte, ttl time.Duration) error {
	if r := sluice_plugin_kv.Set(key, value, ttlMs(ttl)); r.IsErr() {
		return kvErr(r.Err())
	}
	return nil
}

// KvIncr adds delta to the integer at key (absent counts as 0) and returns the new value;
// ttl applies when this call creates the key.
func KvIncr(key string, delta int64, ttl time.Duration) (int64, error) {
	r := sluice_plugin_kv.Incr(key, delta, ttlMs(ttl))
	if r.IsErr() {
		return 0, kvErr(r.Err())
	}
	return r.Ok(), nil
}

// KvIncrAndGet is KvIncr of key and KvGet of other in one call to the host (and, with Redis,
// one round trip): a sliding window counts a hit in this window and reads the last one.
// value is nil when other is absent. Since sluice:plugin@0.2.2.
func KvIncrAndGet(key string, delta int64, ttl time.Duration, other string) (n int64, value []byte, err error) {
	r := sluice_plugin_kv.IncrAndGet(key, delta, ttlMs(ttl), other)
	if r.IsErr() {
		return 0, nil, kvErr(r.Err())
	}
	got := r.Ok()
	if got.F1.IsSome() {
		value = got.F1.Some()
	}
	return got.F0, value, nil
}

// KvCompareAndSwap stores value only if the current value equals expected (nil: only if
// absent), and reports whether it stored.
func KvCompareAndSwap(key string, expected, value []byte, ttl time.Duration) (bool, error) {
	exp := witTypes.None[[]uint8]()
	if expected != nil {
		exp = witTypes.Some(expected)
	}
	r := sluice_plugin_kv.CompareAndSwap(key, exp, value, ttlMs(ttl))
	if r.IsErr() {
		return false, kvErr(r.Err())
	}
	return r.Ok(), nil
}

// KvDelete removes key and reports whether it was present.
func KvDelete(key string) (bool, error) {
	r := sluice_plugin_kv.Delete(key)
	if r.IsErr() {
		return false, kvErr(r.Err())
	}
	return r.Ok(), nil
}
