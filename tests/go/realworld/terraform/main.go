// Command terraform-provider-tether is a small Terraform provider of tether's own, written
// on HashiCorp's terraform-plugin-framework and served with providerserver.Serve exactly as
// real providers are. tether's end-to-end tests (tests/e2e/interop_real.rs) start it the
// way Terraform does and read its schema.
//
// It has one resource, tether_note, whose whole state lives in Terraform's state, and one
// data source, tether_greeting, which computes a greeting from a name.
package main

import (
	"context"
	"flag"
	"log"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"
)

func main() {
	var debug bool
	flag.BoolVar(&debug, "debug", false, "run with support for debuggers such as delve")
	flag.Parse()

	err := providerserver.Serve(context.Background(), newProvider, providerserver.ServeOpts{
		Address: "registry.terraform.io/tether-rs/tether",
		Debug:   debug,
	})
	if err != nil {
		log.Fatal(err.Error())
	}
}
