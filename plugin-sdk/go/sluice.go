// Package sluice writes Sluice gateway plugins in Go (mainline Go 1.24 or newer, not
// TinyGo), for the sluice:plugin@0.2.3 world in wit/ (its `handler-plugin` world, whose
// hooks take no resource handles).
//
// A plugin is a type with a request and a response method, registered from an init
// function with a constructor that receives the plugin's config:
//
//	package main
//
//	import "sluice.dev/pdk"
//
//	type hello struct{ greeting string }
//
//	func (h *hello) OnRequest(req *sluice.Request) sluice.Action {
//		req.SetHeader("x-greeting", h.greeting)
//		return sluice.Continue()
//	}
//
//	func (h *hello) OnResponse(req *sluice.Request, resp *sluice.Response) {}
//
//	func init() {
//		sluice.Register(func(config []byte) (sluice.Plugin, error) {
//			var c struct{ Greeting string `json:"greeting"` }
//			if err := sluice.DecodeConfig(config, &c); err != nil {
//				return nil, err
//			}
//			return &hello{greeting: c.Greeting}, nil
//		})
//	}
//
//	func main() {}
//
// Build it with `sluice plugin build` (see docs/plugin-guide.md).
//
// The SDK keeps Go's runtime safe inside a component, so plugin code never has to:
// memory the host asks for while Go starts comes from outside Go's heap; a garbage
// collection that starts while the host is placing arguments in Go memory does not call
// out of the component (the WASI adapter's clock is paused there); and what the host
// placed in Go memory during a call is released when the call returns, so memory stays
// flat however many requests an instance serves.
package sluice

import (
	"bytes"
	"encoding/json"
	"fmt"

	handlerExport "sluice.dev/pdk/internal/bindings/exports/export_sluice_plugin_handler"
	_ "sluice.dev/pdk/internal/bindings/exports/wit_exports" // the component's exports
	"sluice.dev/pdk/internal/bindings/imports/sluice_plugin_handler"
	"sluice.dev/pdk/internal/bindings/imports/sluice_plugin_http"
	request "sluice.dev/pdk/internal/bindings/imports/sluice_plugin_request"
	response "sluice.dev/pdk/internal/bindings/imports/sluice_plugin_response"
	witTypes "sluice.dev/pdk/internal/wit/types"
)

// Plugin handles the two phases of a request. One value serves many requests, one at a
// time (an instance is never called concurrently).
type Plugin interface {
	// OnRequest runs before the request goes upstream: change it, or answer it.
	OnRequest(req *Request) Action
	// OnResponse runs on the response on its way to the client (the upstream's, or a
	// local one from a later plugin).
	OnResponse(req *Request, resp *Response)
}

// Phases is optionally implemented by a Plugin to skip a phase it does not use: the host
// then never calls it, which saves a call per request.
type Phases interface {
	Phases() (request, response bool)
}

// Register installs the plugin's constructor. Call it once, from an init function.
// The constructor runs once per instance with the plugin's `config` table from the
// gateway's TOML, encoded as JSON; an error rejects the config, and the gateway reports
// it with the plugin's TOML path.
func Register(newPlugin func(config []byte) (Plugin, error)) {
	var plugin Plugin
	handlerExport.InitFn = func(config string) (handlerExport.Hooks, error) {
		p, err := safely(func() (Plugin, error) { return newPlugin([]byte(config)) })
		if err != nil {
			return 0, err
		}
		if p == nil {
			return 0, fmt.Errorf("the plugin's constructor returned no plugin")
		}
		plugin = p
		onRequest, onResponse := true, true
		if ph, ok := p.(Phases); ok {
			onRequest, onResponse = ph.Phases()
		}
		var hooks handlerExport.Hooks
		if onRequest {
			hooks |= sluice_plugin_handler.Hooks_OnRequest
		}
		if onResponse {
			hooks |= sluice_plugin_handler.Hooks_OnResponse
		}
		return hooks, nil
	}
	// The request and response are the call's: the values carry nothing, so passing them
	// allocates nothing.
	handlerExport.OnRequestFn = func() sluice_plugin_handler.Action {
		return plugin.OnRequest(&Request{}).raw
	}
	handlerExport.OnResponseFn = func() {
		plugin.OnResponse(&Request{}, &Response{})
	}
}

// safely turns a panic in the constructor into a config error.
func safely(f func() (Plugin, error)) (p Plugin, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the plugin's constructor panicked: %v", r)
		}
	}()
	return f()
}

// DecodeConfig decodes the JSON config into v, refusing fields v does not have, so a typo
// in the TOML is an error rather than a silently ignored setting.
func DecodeConfig(config []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(config))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// Action is what the request phase decided: Continue, or Respond.
type Action struct {
	raw sluice_plugin_handler.Action
}

// Continue goes on with the next plugin, then the upstream.
func Continue() Action {
	return Action{raw: sluice_plugin_handler.MakeActionContinue()}
}

// Respond answers the client with this response instead of the upstream's. Later plugins
// and the upstream are skipped. headers may be nil; the host sets content-length.
func Respond(status int, headers map[string]string, body []byte) Action {
	pairs := make([]witTypes.Tuple2[string, string], 0, len(headers))
	for name, value := range headers {
		pairs = append(pairs, witTypes.Tuple2[string, string]{F0: name, F1: value})
	}
	return Action{raw: sluice_plugin_handler.MakeActionRespond(sluice_plugin_handler.LocalResponse{
		Status:  uint16(status),
		Headers: pairs,
		Body:    body,
	})}
}

// FieldError says why a method, path, query, status or header could not be changed.
type FieldError struct {
	// Reason is "invalid-name", "invalid-value" or "forbidden" (a header the host owns,
	// such as connection or content-length).
	Reason string
}

func (e *FieldError) Error() string {
	return "sluice: cannot set field: " + e.Reason
}

func fieldResult(r witTypes.Result[witTypes.Unit, sluice_plugin_http.FieldError]) error {
	if r.IsOk() {
		return nil
	}
	return fieldErr(r.Err())
}

func fieldErr(e sluice_plugin_http.FieldError) *FieldError {
	switch e.Tag() {
	case sluice_plugin_http.FieldError_InvalidName:
		return &FieldError{Reason: "invalid-name"}
	case sluice_plugin_http.FieldError_InvalidValue:
		return &FieldError{Reason: "invalid-value"}
	default:
		return &FieldError{Reason: "forbidden"}
	}
}

// HeaderEdit is one change for EditHeaders: made by EditSet, EditAppend or EditRemove.
type HeaderEdit struct{ raw sluice_plugin_http.HeaderEdit }

// EditSet replaces every value of name, as SetHeader does.
func EditSet(name, value string) HeaderEdit {
	return HeaderEdit{sluice_plugin_http.MakeHeaderEditSet(witTypes.Tuple2[string, string]{F0: name, F1: value})}
}

// EditAppend adds a value for name, as AppendHeader does.
func EditAppend(name, value string) HeaderEdit {
	return HeaderEdit{sluice_plugin_http.MakeHeaderEditAppend(witTypes.Tuple2[string, string]{F0: name, F1: value})}
}

// EditRemove removes every value of name, as RemoveHeader does.
func EditRemove(name string) HeaderEdit {
	return HeaderEdit{sluice_plugin_http.MakeHeaderEditRemove(name)}
}

// EditError says which edit of an EditHeaders batch was refused (its index) and why; when
// one is refused, none is made.
type EditError struct {
	Index int
	FieldError
}

func (e *EditError) Error() string {
	return fmt.Sprintf("sluice: header edit %d refused: %s", e.Index, e.Reason)
}

func editResult(r witTypes.Result[witTypes.Unit, sluice_plugin_http.EditError]) error {
	if r.IsOk() {
		return nil
	}
	e := r.Err()
	return &EditError{Index: int(e.Index), FieldError: *fieldErr(e.Error)}
}

func rawEdits(edits []HeaderEdit) []sluice_plugin_http.HeaderEdit {
	raw := make([]sluice_plugin_http.HeaderEdit, len(edits))
	for i, e := range edits {
		raw[i] = e.raw
	}
	return raw
}

// headerValues splits a batch answer into values ("" when absent) and presence.
func headerValues(got []witTypes.Option[string]) (values []string, present []bool) {
	values, present = make([]string, len(got)), make([]bool, len(got))
	for i, o := range got {
		values[i], present[i] = option(o)
	}
	return values, present
}

// BodyError says why a body could not be read.
type BodyError struct {
	// TooLarge is set when the body is over the route's max_body_bytes (this limit).
	// Nothing is lost: the host still forwards the whole body.
	TooLarge uint64
	// ReadFailed is set when the peer failed or went away.
	ReadFailed string
}

func (e *BodyError) Error() string {
	if e.ReadFailed != "" {
		return "sluice: reading the body failed: " + e.ReadFailed
	}
	return fmt.Sprintf("sluice: body larger than %d bytes", e.TooLarge)
}

func bodyResult(r witTypes.Result[[]uint8, sluice_plugin_http.BodyError]) ([]byte, error) {
	handlerExport.BodyRead()
	if r.IsOk() {
		return r.Ok(), nil
	}
	e := r.Err()
	if e.Tag() == sluice_plugin_http.BodyError_TooLarge {
		return nil, &BodyError{TooLarge: e.TooLarge()}
	}
	return nil, &BodyError{ReadFailed: e.ReadFailed()}
}

func option(o witTypes.Option[string]) (string, bool) {
	if o.IsSome() {
		return o.Some(), true
	}
	return "", false
}

// Request is the request as it will be sent upstream. It is valid only during the call
// it was passed to.
type Request struct{}

func (r *Request) Method() string { return request.Method() }
func (r *Request) SetMethod(method string) error {
	return fieldResult(request.SetMethod(method))
}

// Path is the path without the query, e.g. /api/users/7.
func (r *Request) Path() string { return request.Path() }
func (r *Request) SetPath(path string) error {
	return fieldResult(request.SetPath(path))
}

// Query is the raw query string without the '?'; ok is false when there is none.
func (r *Request) Query() (query string, ok bool) { return option(request.Query()) }

// SetQuery replaces the query; "" removes it.
func (r *Request) SetQuery(query string) error {
	if query == "" {
		return fieldResult(request.SetQuery(witTypes.None[string]()))
	}
	return fieldResult(request.SetQuery(witTypes.Some(query)))
}

// Header is the first value of the header; ok is false when it is absent.
func (r *Request) Header(name string) (value string, ok bool) { return option(request.Header(name)) }

// HeaderValues is every value of the header, in order.
func (r *Request) HeaderValues(name string) []string { return request.HeaderAll(name) }

// HeaderNames is the distinct header names, lower-case, in order of first appearance.
func (r *Request) HeaderNames() []string { return request.HeaderNames() }
func (r *Request) SetHeader(name, value string) error {
	return fieldResult(request.SetHeader(name, value))
}
func (r *Request) AppendHeader(name, value string) error {
	return fieldResult(request.AppendHeader(name, value))
}
func (r *Request) RemoveHeader(name string) error {
	return fieldResult(request.RemoveHeader(name))
}

// Headers is the first value of each named header (at most 128), in one call to the host
// ("" and false when absent). Since sluice:plugin@0.2.2.
func (r *Request) Headers(names ...string) (values []string, present []bool) {
	return headerValues(request.Headers(names))
}

// EditHeaders makes every edit (at most 128) in order, in one call to the host: all of
// them, or none if one is refused (an *EditError names it). Since sluice:plugin@0.2.2.
func (r *Request) EditHeaders(edits ...HeaderEdit) error {
	return editResult(request.EditHeaders(rawEdits(edits)))
}

// Body is the whole body, buffered by the host on the first call (up to the route's
// max_body_bytes).
func (r *Request) Body() ([]byte, error) { return bodyResult(request.Body()) }

// SetBody replaces the body; the host sets content-length.
func (r *Request) SetBody(body []byte) { request.SetBody(body) }

func (r *Request) ClientIP() string  { return request.ClientIp() }
func (r *Request) RequestID() string { return request.RequestId() }

// Route is the name of the route that matched.
func (r *Request) Route() string { return request.Route() }

// Param is route parameter name ({id} in path = "/users/{id}"), percent-decoded.
func (r *Request) Param(name string) (value string, ok bool) { return option(request.Param(name)) }

// ClientCert is who the client's TLS certificate says it is.
type ClientCert struct {
	// Subject is the subject's distinguished name, e.g. "CN=alice, O=Example".
	Subject string
	// Issuer is the issuer's distinguished name.
	Issuer string
	// SANs are the subject alternative names with their kinds: "DNS:api.example.com",
	// "URI:spiffe://example.org/web", "email:alice@example.com", "IP:10.0.0.7".
	SANs []string
	// Fingerprint is the SHA-256 of the certificate's DER bytes, in lower-case hex.
	Fingerprint string
}

// ClientCert is the certificate the client presented on this request's connection,
// verified against the listener's client_ca (mTLS); ok is false on plain HTTP and when the
// client sent none. Since sluice:plugin@0.2.1.
func (r *Request) ClientCert() (cert ClientCert, ok bool) {
	o := request.ClientCert()
	if !o.IsSome() {
		return ClientCert{}, false
	}
	c := o.Some()
	return ClientCert{Subject: c.Subject, Issuer: c.Issuer, SANs: c.Sans, Fingerprint: c.Fingerprint}, true
}

// Context is what this plugin stored under key for this request with SetContext.
func (r *Request) Context(key string) (value string, ok bool) { return option(request.Context(key)) }

// SetContext keeps value for this plugin's later phases of this request.
func (r *Request) SetContext(key, value string) error {
	return fieldResult(request.SetContext(key, value))
}

// Response is the response on its way to the client. It is valid only during the call
// it was passed to.
type Response struct{}

func (r *Response) Status() int { return int(response.Status()) }
func (r *Response) SetStatus(code int) error {
	if code < 0 || code > 65535 {
		return &FieldError{Reason: "invalid-value"}
	}
	return fieldResult(response.SetStatus(uint16(code)))
}
func (r *Response) Header(name string) (value string, ok bool) { return option(response.Header(name)) }
func (r *Response) HeaderValues(name string) []string          { return response.HeaderAll(name) }
func (r *Response) HeaderNames() []string                      { return response.HeaderNames() }
func (r *Response) SetHeader(name, value string) error {
	return fieldResult(response.SetHeader(name, value))
}
func (r *Response) AppendHeader(name, value string) error {
	return fieldResult(response.AppendHeader(name, value))
}
func (r *Response) RemoveHeader(name string) error {
	return fieldResult(response.RemoveHeader(name))
}

// Headers is the first value of each named header, in one call. Since 0.2.2.
func (r *Response) Headers(names ...string) (values []string, present []bool) {
	return headerValues(response.Headers(names))
}

// EditHeaders makes every edit, or none if one is refused. Since 0.2.2.
func (r *Response) EditHeaders(edits ...HeaderEdit) error {
	return editResult(response.EditHeaders(rawEdits(edits)))
}
func (r *Response) Body() ([]byte, error) { return bodyResult(response.Body()) }
func (r *Response) SetBody(body []byte)   { response.SetBody(body) }
