package main

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

// greetingDataSource is tether_greeting: it computes "<prefix>Hello, <name>!".
type greetingDataSource struct {
	prefix string
}

type greetingModel struct {
	Name     types.String `tfsdk:"name"`
	Greeting types.String `tfsdk:"greeting"`
}

func newGreetingDataSource() datasource.DataSource { return &greetingDataSource{} }

func (d *greetingDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_greeting"
}

func (d *greetingDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "A greeting computed from a name.",
		Attributes: map[string]schema.Attribute{
			"name": schema.StringAttribute{
				Description: "Who to greet.",
				Required:    true,
			},
			"greeting": schema.StringAttribute{
				Description: "The greeting.",
				Computed:    true,
			},
		},
	}
}

func (d *greetingDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, _ *datasource.ConfigureResponse) {
	if prefix, ok := req.ProviderData.(string); ok {
		d.prefix = prefix
	}
}

func (d *greetingDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var data greetingModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &data)...)
	if resp.Diagnostics.HasError() {
		return
	}
	data.Greeting = types.StringValue(d.prefix + "Hello, " + data.Name.ValueString() + "!")
	resp.Diagnostics.Append(resp.State.Set(ctx, data)...)
}
