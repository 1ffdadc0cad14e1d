// {{name}}: stamps requests with a greeting, answers GET /hello, marks responses.
package main

import (
	"fmt"
	"strings"

	"sluice.dev/pdk"
)

type config struct {
	Greeting string `json:"greeting"`
}

type greeter struct{ greeting string }

func (g *greeter) OnRequest(req *sluice.Request) sluice.Action {
	sluice.Infof("%s %s", req.Method(), req.Path())
	if req.Path() == "/hello" {
		body := fmt.Sprintf("%s from {{name}}\n", g.greeting)
		return sluice.Respond(200, map[string]string{"content-type": "text/plain"}, []byte(body))
	}
	_ = req.SetHeader("x-greeting", g.greeting)
	return sluice.Continue()
}

func (g *greeter) OnResponse(req *sluice.Request, resp *sluice.Response) {
	_ = resp.SetHeader("x-plugin", "{{name}}")
}

func init() {
	sluice.Register(func(raw []byte) (sluice.Plugin, error) {
		var c config
		if err := sluice.DecodeConfig(raw, &c); err != nil {
			return nil, err
		}
		if strings.TrimSpace(c.Greeting) == "" {
			return nil, fmt.Errorf("config.greeting: must not be empty")
		}
		return &greeter{greeting: c.Greeting}, nil
	})
}

func main() {}
