package org.apache.beam.runners.jobsubmission;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.Message;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.Struct;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.Value;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.util.JsonFormat;

/**
 * Layout of a self-contained pipeline jar (written by {@link PortablePipelineJarCreator}, read
 * by the runner's main class, e.g. FlinkPipelineRunner):
 *
 * <pre>
 * BEAM-PIPELINE/pipeline-manifest.json         {"defaultJobName": "..."}
 * BEAM-PIPELINE/JOB/pipeline.json              the RunnerApi.Pipeline as proto JSON
 * BEAM-PIPELINE/JOB/pipeline-options.json      the options Struct as proto JSON
 * BEAM-PIPELINE/JOB/artifacts/ID               the environments' artifacts
 * </pre>
 */
public final class PortablePipelineJarUtils {
  static final String ROOT = "BEAM-PIPELINE";
  static final String MANIFEST = ROOT + "/pipeline-manifest.json";
  static final String DEFAULT_JOB_NAME = "defaultJobName";

  private PortablePipelineJarUtils() {}

  static String pipelinePath(String jobName) {
    return ROOT + "/" + jobName + "/pipeline.json";
  }

  static String optionsPath(String jobName) {
    return ROOT + "/" + jobName + "/pipeline-options.json";
  }

  static String artifactPath(String jobName, String artifactId) {
    return ROOT + "/" + jobName + "/artifacts/" + artifactId;
  }

  /** The manifest's JSON for {@code jobName}. */
  static String manifestJson(String jobName) throws IOException {
    Struct manifest =
        Struct.newBuilder()
            .putFields(DEFAULT_JOB_NAME, Value.newBuilder().setStringValue(jobName).build())
            .build();
    return JsonFormat.printer().print(manifest);
  }

  public static String getDefaultJobName() throws IOException {
    return getDefaultJobName(classLoader());
  }

  static String getDefaultJobName(ClassLoader loader) throws IOException {
    Struct.Builder manifest = Struct.newBuilder();
    readJson(loader, MANIFEST, manifest);
    Value name = manifest.getFieldsMap().get(DEFAULT_JOB_NAME);
    if (name == null || name.getStringValue().isEmpty()) {
      throw new IOException(MANIFEST + " names no " + DEFAULT_JOB_NAME);
    }
    return name.getStringValue();
  }

  public static RunnerApi.Pipeline getPipelineFromClasspath(String jobName) throws IOException {
    return getPipelineFromClasspath(classLoader(), jobName);
  }

  static RunnerApi.Pipeline getPipelineFromClasspath(ClassLoader loader, String jobName)
      throws IOException {
    RunnerApi.Pipeline.Builder pipeline = RunnerApi.Pipeline.newBuilder();
    readJson(loader, pipelinePath(jobName), pipeline);
    return pipeline.build();
  }

  public static Struct getPipelineOptionsFromClasspath(String jobName) throws IOException {
    return getPipelineOptionsFromClasspath(classLoader(), jobName);
  }

  static Struct getPipelineOptionsFromClasspath(ClassLoader loader, String jobName)
      throws IOException {
    Struct.Builder options = Struct.newBuilder();
    readJson(loader, optionsPath(jobName), options);
    return options.build();
  }

  private static ClassLoader classLoader() {
    return PortablePipelineJarUtils.class.getClassLoader();
  }

  private static void readJson(ClassLoader loader, String resource, Message.Builder into)
      throws IOException {
    try (InputStream in = loader.getResourceAsStream(resource)) {
      if (in == null) {
        throw new FileNotFoundException("Resource " + resource + " is not on the classpath.");
      }
      JsonFormat.parser().merge(new String(in.readAllBytes(), StandardCharsets.UTF_8), into);
    }
  }
}
