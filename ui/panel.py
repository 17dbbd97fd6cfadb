"""3D View > Sidebar > Unposed: the running job, import/export, match camera, reconstruct, train splats."""
from __future__ import annotations

import bpy


def draw_job(layout: bpy.types.UILayout, state) -> None:
    """The job's progress bar and Cancel button while it runs, else its last message (`state`: UnposedJobState)."""
    if state.running:
        layout.label(text=state.label, icon='SORTTIME')
        row = layout.row(align=True)
        row.progress(factor=state.progress, type='BAR', text=state.text or "Starting...")
        row.operator("unposed.cancel_job", text="", icon='CANCEL')
        if state.message:
            layout.label(text=state.message)
    else:
        layout.label(text=state.message or "No job running", icon='INFO')


class _SidebarPanel:
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "Unposed"


class UNPOSED_PT_job(_SidebarPanel, bpy.types.Panel):
    bl_label = "Job"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = context.window_manager.unposed_job
        return state.running or bool(state.message)

    def draw(self, context: bpy.types.Context) -> None:
        draw_job(self.layout, context.window_manager.unposed_job)


class UNPOSED_PT_import_export(_SidebarPanel, bpy.types.Panel):
    bl_label = "Import / Export"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.unposed
        col = layout.column()
        col.prop(settings, "images_dir")
        op = col.operator("unposed.import_scene", icon='IMPORT')
        op.images_dir = settings.images_dir

        layout.separator()
        col = layout.column()
        col.prop(settings, "export_format")
        col.prop(settings, "export_selected_only")
        op = col.operator("unposed.export_scene", icon='EXPORT')
        op.format = settings.export_format
        op.selected_only = settings.export_selected_only


class UNPOSED_PT_match_camera(_SidebarPanel, bpy.types.Panel):
    bl_label = "Match Camera"

    def draw(self, context: bpy.types.Context) -> None:
        from ..operators.match_camera import match_target, stored_match

        layout = self.layout
        layout.operator("unposed.match_camera", icon='CAMERA_DATA')  # camera background, Image Editor or a file
        cam = match_target(context)
        state = stored_match(cam)
        if state is None:
            return
        r = state["result"]
        col = layout.column(align=True)
        col.label(text=f"{cam.name}: {r['method']}, confidence {r['confidence']:.2f}")
        col.label(text=f"FoV {r['hfov_deg']:.1f} x {r['vfov_deg']:.1f} deg")
        if r.get("cam_from_world") is not None:
            row = layout.row(align=True)
            op = row.operator("unposed.match_camera_axes", text="Flip X/Y", depress=state["flip"])
            op.flip, op.swap = not state["flip"], state["swap"]
            op = row.operator("unposed.match_camera_axes", text="Swap X/Y", depress=state["swap"])
            op.flip, op.swap = state["flip"], not state["swap"]


class UNPOSED_PT_reconstruct(_SidebarPanel, bpy.types.Panel):
    bl_label = "Reconstruct"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.unposed
        col = self.layout.column()
        col.prop(settings, "reconstruct_backend")
        col.prop(settings, "reconstruct_frame_step")
        op = col.operator("unposed.reconstruct", text="Reconstruct from Photos", icon='IMAGE_DATA')
        op.backend, op.frame_step = settings.reconstruct_backend, settings.reconstruct_frame_step
        col.separator()
        col.prop_search(settings, "reconstruct_clip", bpy.data, "movieclips", text="Clip")
        row = col.row()
        row.enabled = bool(settings.reconstruct_clip)
        op = row.operator("unposed.reconstruct", text="Reconstruct from Clip", icon='SEQUENCE')
        op.clip, op.backend, op.frame_step = (settings.reconstruct_clip, settings.reconstruct_backend,
                                              settings.reconstruct_frame_step)


class UNPOSED_PT_train_splats(_SidebarPanel, bpy.types.Panel):
    bl_label = "Train Splats"

    def draw(self, context: bpy.types.Context) -> None:
        col = self.layout.column()
        col.operator("unposed.train_splats", icon='SHADING_RENDERED')
        row = col.row(align=True)
        row.operator("unposed.import_splats", text="Import .ply", icon='IMPORT')
        row.operator("unposed.export_splats", text="Export .ply", icon='EXPORT')


classes: tuple = (UNPOSED_PT_job, UNPOSED_PT_import_export, UNPOSED_PT_match_camera, UNPOSED_PT_reconstruct,
                  UNPOSED_PT_train_splats)
