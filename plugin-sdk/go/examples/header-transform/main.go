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

type headerTransform struct{ config }

func (h *headerTransform) Phases() (request, response bool) {
	return true, len(h.ResponseHeaders) > 0
}

func (h *headerTransform) OnRequest(req *sluice.Request) sluice.Action {
	for _, name := range h.RemoveRequestHeaders {
		_ = req.RemoveHeader(name)
	}
	for name, value := range h.RequestHeaders {
		if err := req.SetHeader(name, value); err != nil {
			sluice.Warnf("cannot set %s: %v", name, err)
		}
	}
	return sluice.Continue()
}

func (h *headerTransform) OnResponse(req *sluice.Request, resp *sluice.Response) {
	for name, value := range h.ResponseHeaders {
		_ = resp.SetHeader(name, value)
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
		return &headerTransform{c}, nil
	})
}

func main() {}
