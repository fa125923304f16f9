"""MedGen: restore and generate volumes in 3D Slicer with the monai_medgen MONAI Label app.

A scripted module (Slicer 5.x): choose the server and a model, set its options (sampler, steps, seed, number of
samples, factor, class, guidance, ...), pick the input volume (and for inpainting the segment that marks what is
missing), press Apply.  The input is uploaded to ``/infer/<model>``; the result is loaded as a scalar volume named
``"<input> (synthetic, <task>)"`` and, with more than one sample, the standard deviation map as
``"<input> (synthetic, <task>, uncertainty)"``.  "Generate new volume" asks the ``generate`` active-learning
strategy for a new synthetic volume (what MONAI Label's "Next Sample" does) and loads it.

Install: Edit > Application Settings > Modules > Additional module paths: add this folder
(``scripts/slicer/MedGen``, the one holding MedGen.py), restart Slicer; the module is under "MONAI".  Everything that does not need Slicer
is in ``medgen_client.py`` beside this file (tested without Slicer).
"""

import json
import os
import sys
import tempfile
import threading
import time

import ctk
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import medgen_client  # noqa: E402  (beside this file; plain Python, no Slicer)

SETTINGS_SERVER = "MedGen/server"


class MedGen(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "MedGen"
        parent.categories = ["MONAI"]
        parent.dependencies = []
        parent.contributors = ["monai_medgen contributors"]
        parent.helpText = (
            "Restore (super-resolution, denoising, inpainting) or generate volumes with the diffusion models of the "
            "monai_medgen MONAI Label app. Results are synthetic images: not for diagnosis."
        )
        parent.acknowledgementText = "Uses MONAI and MONAI Label (Apache-2.0)."


class MedGenLogic(ScriptedLoadableModuleLogic):
    """Upload, call, load: everything the widget does that is not layout."""

    def __init__(self, server=medgen_client.DEFAULT_SERVER):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = medgen_client.MedGenClient(server)
        self.tmpdir = tempfile.mkdtemp(prefix="medgen_slicer_")

    def models(self):
        return self.client.models()

    def _write_volume(self, node, path):
        """Write a volume node to ``path`` without changing where the scene thinks it is stored."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise RuntimeError(f"could not write {node.GetName()} to {path}")
        return path

    def write_mask(self, segmentation_node, segment_id, reference_node, path):
        """The segment as a 0/1 labelmap on the reference volume's grid (1 = missing), written to ``path``."""
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MedGen mask")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference_node
            )
            return self._write_volume(labelmap, path)
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)

    def run_in_background(self, function, label):
        """Run ``function()`` in a thread while a busy progress dialog shows the elapsed time; return its result or
        raise its exception."""
        result, error = {}, {}

        def target():
            try:
                result["value"] = function()
            except Exception as e:  # re-raised in the main thread
                error["value"] = e

        thread = threading.Thread(target=target, daemon=True)
        dialog = slicer.util.createProgressDialog(labelText=label, maximum=0)
        dialog.setCancelButton(None)
        start = time.time()
        thread.start()
        try:
            while thread.is_alive():
                dialog.setLabelText(f"{label} ({time.time() - start:.0f} s)")
                slicer.app.processEvents()
                time.sleep(0.05)
        finally:
            dialog.close()
        if "value" in error:
            raise error["value"]
        return result.get("value")

    def load_result(self, result, input_name):
        """Load the result (and its uncertainty) volumes, named after the input and the task; returns the nodes."""
        stem = f"medgen_{int(time.time() * 1000)}"
        image_path, std_path = result.save(self.tmpdir, stem)
        task = result.task
        node = slicer.util.loadVolume(image_path, properties={"name": medgen_client.result_volume_name(input_name, task)})
        node.SetAttribute("MedGen.synthetic", "true")
        node.SetAttribute("MedGen.provenance", json.dumps(result.medgen.get("provenance", {})))
        std_node = None
        if std_path:
            std_node = slicer.util.loadVolume(
                std_path, properties={"name": medgen_client.uncertainty_volume_name(input_name, task), "show": False}
            )
            std_node.SetAttribute("MedGen.synthetic", "true")
        return node, std_node

    def run(self, model, volume_node, params, segmentation_node=None, segment_id=None):
        image_path = self._write_volume(volume_node, os.path.join(self.tmpdir, "input.nii.gz"))
        mask_path = None
        if model.needs_mask:
            if segmentation_node is None or not segment_id:
                raise ValueError(f"{model.name} inpaints: select the segment that marks the region to fill in.")
            mask_path = self.write_mask(segmentation_node, segment_id, volume_node, os.path.join(self.tmpdir, "mask.nii.gz"))
        result = self.run_in_background(
            lambda: self.client.infer(model.name, image_path, params, mask_path), f"{model.name} on {volume_node.GetName()}"
        )
        return self.load_result(result, volume_node.GetName())

    def generate_next(self, params):
        entry = self.run_in_background(lambda: self.client.next_sample("generate", params), "Generating a new volume")
        if not entry or not entry.get("id"):
            raise ValueError("the server has no 'generate' strategy (no generative bundle is served).")
        path = os.path.join(self.tmpdir, f"{entry['id']}.nii.gz")
        self.client.download_image(entry["id"], path)
        node = slicer.util.loadVolume(path, properties={"name": medgen_client.result_volume_name(entry["id"], "generate")})
        node.SetAttribute("MedGen.synthetic", "true")
        return node


class MedGenWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = None
        self.models = {}
        self.option_widgets = {}

        server_box = ctk.ctkCollapsibleButton()
        server_box.text = "Server and model"
        self.layout.addWidget(server_box)
        form = qt.QFormLayout(server_box)
        self.server_edit = qt.QLineEdit(qt.QSettings().value(SETTINGS_SERVER, medgen_client.DEFAULT_SERVER))
        self.connect_button = qt.QPushButton("Connect")
        row = qt.QHBoxLayout()
        row.addWidget(self.server_edit)
        row.addWidget(self.connect_button)
        form.addRow("MONAI Label server:", row)
        self.model_combo = qt.QComboBox()
        form.addRow("Model:", self.model_combo)
        self.description_label = qt.QLabel("")
        self.description_label.wordWrap = True
        form.addRow(self.description_label)

        inputs_box = ctk.ctkCollapsibleButton()
        inputs_box.text = "Input"
        self.layout.addWidget(inputs_box)
        inputs = qt.QFormLayout(inputs_box)
        self.volume_selector = slicer.qMRMLNodeComboBox()
        self.volume_selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.volume_selector.selectNodeUponCreation = True
        self.volume_selector.addEnabled = False
        self.volume_selector.removeEnabled = False
        self.volume_selector.noneEnabled = True
        self.volume_selector.setMRMLScene(slicer.mrmlScene)
        self.volume_selector.setToolTip("Volume to restore (for generation: whose field of view the result takes).")
        inputs.addRow("Input volume:", self.volume_selector)
        self.segment_selector = slicer.qMRMLSegmentSelectorWidget()
        self.segment_selector.setMRMLScene(slicer.mrmlScene)
        self.segment_selector.setToolTip("Inpainting: the segment that marks the region to fill in (1 = missing).")
        self.mask_label = qt.QLabel("Mask segment:")
        inputs.addRow(self.mask_label, self.segment_selector)

        self.options_box = ctk.ctkCollapsibleButton()
        self.options_box.text = "Options"
        self.layout.addWidget(self.options_box)
        self.options_form = qt.QFormLayout(self.options_box)

        self.apply_button = qt.QPushButton("Apply")
        self.apply_button.enabled = False
        self.layout.addWidget(self.apply_button)
        self.generate_button = qt.QPushButton("Generate new volume (Next Sample)")
        self.generate_button.enabled = False
        self.layout.addWidget(self.generate_button)
        self.status_label = qt.QLabel("Not connected.")
        self.status_label.wordWrap = True
        self.layout.addWidget(self.status_label)
        self.layout.addStretch(1)

        self.connect_button.connect("clicked(bool)", self.on_connect)
        self.model_combo.connect("currentIndexChanged(int)", self.on_model_changed)
        self.apply_button.connect("clicked(bool)", self.on_apply)
        self.generate_button.connect("clicked(bool)", self.on_generate)
        self.update_mask_visibility()

    # ---- helpers -----------------------------------------------------------------------------
    def current_model(self):
        return self.models.get(self.model_combo.currentText)

    def update_mask_visibility(self):
        model = self.current_model()
        show = bool(model and model.needs_mask)
        self.segment_selector.setVisible(show)
        self.mask_label.setVisible(show)

    def clear_options(self):
        while self.options_form.rowCount() > 0:
            self.options_form.removeRow(0)
        self.option_widgets = {}

    def add_option(self, option):
        if option.kind == "choice":
            widget = qt.QComboBox()
            for choice in option.choices:
                widget.addItem(str(choice))
        elif option.kind == "int":
            widget = qt.QSpinBox()
            widget.minimum = int(option.minimum if option.minimum is not None else -(2**31) + 1)
            widget.maximum = int(option.maximum if option.maximum is not None else 2**31 - 1)
            widget.value = int(option.default)
        elif option.kind == "float":
            widget = qt.QDoubleSpinBox()
            widget.decimals = 3
            widget.minimum = float(option.minimum if option.minimum is not None else -1e9)
            widget.maximum = float(option.maximum if option.maximum is not None else 1e9)
            widget.value = float(option.default)
        elif option.kind == "bool":
            widget = qt.QCheckBox()
            widget.checked = bool(option.default)
        else:
            widget = qt.QLineEdit(str(option.default))
        self.options_form.addRow(f"{option.name}:", widget)
        self.option_widgets[option.name] = (option, widget)

    def option_values(self):
        values = {}
        for name, (option, widget) in self.option_widgets.items():
            if option.kind == "choice":
                values[name] = option.choices[widget.currentIndex]
            elif option.kind in ("int", "float"):
                values[name] = widget.value
            elif option.kind == "bool":
                values[name] = widget.checked
            else:
                values[name] = widget.text
        return values

    # ---- slots -------------------------------------------------------------------------------
    def on_connect(self):
        server = self.server_edit.text.strip()
        try:
            self.logic = MedGenLogic(server)
            slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                self.models = self.logic.models()
            finally:
                slicer.app.restoreOverrideCursor()
        except (ValueError, medgen_client.ServerError) as e:
            self.models = {}
            self.model_combo.clear()
            self.status_label.text = "Not connected."
            slicer.util.errorDisplay(f"Could not connect to {server}: {e}")
            return
        qt.QSettings().setValue(SETTINGS_SERVER, server)
        self.model_combo.clear()
        for name in self.models:
            self.model_combo.addItem(name)
        if not self.models:
            self.status_label.text = f"{server} serves no monai_medgen model."
        else:
            self.status_label.text = f"Connected to {server}: {len(self.models)} model(s)."
        self.generate_button.enabled = any(m.generative for m in self.models.values())
        self.on_model_changed()

    def on_model_changed(self, index=None):
        self.clear_options()
        model = self.current_model()
        self.apply_button.enabled = model is not None
        self.description_label.text = f"{model.description} [task: {model.task}]" if model else ""
        if model:
            for option in model.options:
                self.add_option(option)
        self.update_mask_visibility()

    def on_apply(self):
        model = self.current_model()
        volume = self.volume_selector.currentNode()
        if model is None or self.logic is None:
            slicer.util.errorDisplay("Connect to a server and choose a model first.")
            return
        if volume is None:
            what = "the reference volume (its field of view)" if model.generative else "the volume to process"
            slicer.util.errorDisplay(f"Select an input volume: {what}.")
            return
        try:
            params = medgen_client.request_params(model, self.option_values())
            node, std_node = self.logic.run(
                model, volume, params, self.segment_selector.currentNode(), self.segment_selector.currentSegmentID()
            )
        except medgen_client.ServerError as e:
            slicer.util.errorDisplay(f"{model.name}: {e}")
            return
        except ValueError as e:
            slicer.util.errorDisplay(str(e))
            return
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        self.status_label.text = f"Loaded '{node.GetName()}'" + (f" and '{std_node.GetName()}'." if std_node else ".")

    def on_generate(self):
        if self.logic is None:
            return
        model = self.current_model()
        try:
            params = medgen_client.request_params(model, self.option_values()) if model and model.generative else {}
            node = self.logic.generate_next(params)
        except (medgen_client.ServerError, ValueError) as e:
            slicer.util.errorDisplay(f"Generate: {e}")
            return
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        self.status_label.text = f"Loaded '{node.GetName()}' (synthetic)."


class MedGenTest(ScriptedLoadableModuleTest):
    """Slicer self-test: the names and option parsing of the client on a recorded ``/info/`` entry (no server)."""

    def runTest(self):
        info = {"models": {"m": {"description": "d", "dimension": 2, "config": {"steps": 20, "sampler": ["dpm++", "ddim"]},
                                  "medgen": {"task": "denoise", "limits": {"steps": [1, 100]}}}}}
        model = medgen_client.parse_info(info)["m"]
        assert medgen_client.request_params(model, {"steps": 5, "sampler": "ddim"}) == {"steps": 5, "sampler": "ddim"}
        assert medgen_client.result_volume_name("MRHead", "denoise") == "MRHead (synthetic, denoise)"
        self.delayDisplay("MedGen client test passed")
