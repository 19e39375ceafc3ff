package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

// noteResource is tether_note: a titled text whose id is derived from its content. It
// touches nothing outside Terraform's state.
type noteResource struct{}

type noteModel struct {
	ID     types.String `tfsdk:"id"`
	Title  types.String `tfsdk:"title"`
	Body   types.String `tfsdk:"body"`
	Tags   types.List   `tfsdk:"tags"`
	Pinned types.Bool   `tfsdk:"pinned"`
}

func newNoteResource() resource.Resource { return &noteResource{} }

func (r *noteResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_note"
}

func (r *noteResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "A note kept in Terraform's state.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				Description:   "Derived from the title and body.",
				Computed:      true,
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"title": schema.StringAttribute{
				Description:   "The note's title; changing it replaces the note.",
				Required:      true,
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"body": schema.StringAttribute{
				Description: "The note's text.",
				Optional:    true,
			},
			"tags": schema.ListAttribute{
				Description: "Free-form labels.",
				ElementType: types.StringType,
				Optional:    true,
			},
			"pinned": schema.BoolAttribute{
				Description: "Whether the note is pinned.",
				Optional:    true,
			},
		},
	}
}

func noteID(m noteModel) string {
	sum := sha256.Sum256([]byte(m.Title.ValueString() + "\x00" + m.Body.ValueString()))
	return hex.EncodeToString(sum[:8])
}

func (r *noteResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan noteModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	plan.ID = types.StringValue(noteID(plan))
	resp.Diagnostics.Append(resp.State.Set(ctx, plan)...)
}

func (r *noteResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state noteModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, state)...)
}

func (r *noteResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan noteModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	plan.ID = types.StringValue(noteID(plan))
	resp.Diagnostics.Append(resp.State.Set(ctx, plan)...)
}

func (r *noteResource) Delete(_ context.Context, _ resource.DeleteRequest, _ *resource.DeleteResponse) {
	// The note lives only in Terraform's state, which drops it.
}

func (r *noteResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	resource.ImportStatePassthroughID(ctx, path.Root("id"), req, resp)
}
