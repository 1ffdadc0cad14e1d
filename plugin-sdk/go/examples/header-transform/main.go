// A header transform in Go: sets and removes request headers before the upstream sees
// them, and sets response headers on the way back.
//
//	config = { request_headers = { "x-lang" = "go" }, remove_request_headers = ["x-debug"],
//	           response_headers = { "x-served-by" = "sluice-go" } }
package main

import (
	"fmt"

	"sluice.dev/pdk"
)

type config struct {
	RequestHeaders       map[string]string `json:"request_headers"`
	RemoveRequestHeaders []string          `json:"remove_request_headers"`
	ResponseHeaders      map[string]string `json:"response_headers"`
}

// The edits are made once, from the config; each phase sends its own in one call to the
// host (EditHeaders), all of them or, if the host refuses one, none.
type headerTransform struct {
	config
	request, response []sluice.HeaderEdit
}

func (h *headerTransform) Phases() (request, response bool) {
	return true, len(h.ResponseHeaders) > 0
}

func (h *headerTransform) OnRequest(req *sluice.Request) sluice.Action {
	if err := req.EditHeaders(h.request...); err != nil {
		sluice.Warnf("request headers left as they were: %v", err)
	}
	return sluice.Continue()
}

func (h *headerTransform) OnResponse(req *sluice.Request, resp *sluice.Response) {
	if err := resp.EditHeaders(h.response...); err != nil {
		sluice.Warnf("response headers left as they were: %v", err)
	}
}

func init() {
	sluice.Register(func(raw []byte) (sluice.Plugin, error) {
		var c config
		if err := sluice.DecodeConfig(raw, &c); err != nil {
			return nil, err
		}
		if len(c.RequestHeaders)+len(c.RemoveRequestHeaders)+len(c.ResponseHeaders) == 0 {
			return nil, fmt.Errorf("config: nothing to do (set request_headers, remove_request_headers or response_headers)")
		}
		h := &headerTransform{config: c}
		for _, name := range c.RemoveRequestHeaders {
			h.request = append(h.request, sluice.EditRemove(name))
		}
		for name, value := range c.RequestHeaders {
			h.request = append(h.request, sluice.EditSet(name, value))
		}
		for name, value := range c.ResponseHeaders {
			h.response = append(h.response, sluice.EditSet(name, value))
		}
		return h, nil
	})
}

func main() {}
